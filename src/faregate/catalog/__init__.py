"""Models and their credentials: the routing table, stored models, sealing, salt rotation."""
