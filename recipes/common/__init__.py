"""What the sections and compositions share: namespace holders (:mod:`.holder`), the record
of a leftover (:mod:`.leftover`), pictures (:mod:`.pictures`) and the overlay's upper
directory (:mod:`.upperfs`)."""
