"""Labs across machines: the controller (:mod:`.controller`) runs each machine's part through
a Fabric session (:mod:`.sessions`) with the agent (:mod:`recipes.ops.agent`) there; what both
sides must agree on, the version, is in :mod:`.wire`; :mod:`.install` puts this checkout on
every machine, :mod:`.labfile` reads the ``[machines]`` of a lab file."""
