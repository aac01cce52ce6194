"""Example production inventory: three groups, each host with its address on the private network.

Run:  OSTIARY_KEYSTORE_PASSPHRASE=... pyinfra inventories/production.py deploys/site.py

- ``gateways`` run nginx (TLS 1.3, port 443) and ask the session nodes over mutual TLS;
- ``session_nodes`` run the session daemon (public API on ``sessiond_port``, only from gateways);
- ``redis_nodes`` run the session store and the revocation store (TLS ports, only from session
  nodes).

A host may belong to several groups; roles detect co-location and switch to unix sockets.
``private_address`` is where services bind besides loopback and what the firewall, the
certificates and the daemon's store URLs use. Settings shared by a group live in
``group_data/<group>.py``; a per-host value goes in the host's dict below.
"""

gateways = [
    ("gw1.example.internal", {"private_address": "10.20.0.11", "ssh_user": "admin"}),
    ("gw2.example.internal", {"private_address": "10.20.0.12", "ssh_user": "admin"}),
]

session_nodes = [
    ("sess1.example.internal", {"private_address": "10.20.0.21", "ssh_user": "admin"}),
    ("sess2.example.internal", {"private_address": "10.20.0.22", "ssh_user": "admin"}),
]

redis_nodes = [
    # The daemons use the first redis node; a second one would be a standby (not automated here).
    ("redis1.example.internal", {"private_address": "10.20.0.31", "ssh_user": "admin"}),
]
