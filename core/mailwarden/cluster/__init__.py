"""Several gateways as one: the console over every node (:mod:`.console`) and the signed
requests nodes send each other (:mod:`.signing`). What the nodes share through Redis is in
:mod:`mailwarden.sharedstate`; docs/cluster.md tells the whole story."""
