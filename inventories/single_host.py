"""Single-host profile: one host in all three groups (gateway, session daemon and Redis together).

Run:  OSTIARY_KEYSTORE_PASSPHRASE=... pyinfra inventories/single_host.py deploys/site.py

Co-located, nginx reaches the daemon over its unix socket and the daemon reaches both Redis
stores over theirs; nothing but HTTPS (443) and SSH is exposed. Settings are the group defaults
in ``group_data/``; override per host in the dict below.
"""

_host = ("ostiary.example.internal", {"private_address": "10.20.0.10", "ssh_user": "admin"})

gateways = [_host]
session_nodes = [_host]
redis_nodes = [_host]
