"""Operations that span every composition: cleanup, doctor, the machines' agent and the
pytest plugin."""
