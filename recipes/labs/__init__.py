"""Network labs: plans of hosts, routers and links (:mod:`.plan`, :mod:`.shapes`,
:mod:`.routes`, :mod:`.labfile`), built and torn down (:mod:`.build`), shown and checked
(:mod:`.show`), impaired (:mod:`.impair`), and joined across machines by VXLAN (:mod:`.vxlan`,
:mod:`.machines`)."""
