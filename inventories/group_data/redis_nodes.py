"""Settings of the redis nodes: the two Redis stores (sessions, revocations).

Each value shown is the redis role's default (``deploys/redis.py`` ``DEFAULTS``); edit it here
for all redis nodes or per host in the inventory. Passwords and certificates are not settings:
they come from the control node's key store.
"""

redis_sessions_maxmemory_percent = 25  # session store: share of RAM (2 GB on an 8 GB host), LRU beyond
redis_revocations_maxmemory_mb = 256  # revocation store: fixed, never evicts (noeviction)
redis_maxclients = 10000  # per instance; LimitNOFILE follows (maxclients + 32)
# redis_tls_ports lives in all.py: the daemons and firewalls of other hosts read it too.
redis_tls_protocols = "TLSv1.3"
redis_sessions_save = "3600 1 300 100 60 10000"  # RDB snapshots beside the everysec AOF
redis_revocations_save = ""  # AOF only, fsync on every write
redis_latency_monitor_threshold_ms = 5  # the daemon's store latency budget
redis_slowlog_slower_than_us = 10000
redis_tcp_backlog = 1024  # below sysctl_somaxconn
redis_admin_user = "ostiary-admin"  # all commands; password in the control node's key store
redis_socket_group = "ostiary"  # the daemon's group: may use the unix sockets (0770)
redis_apparmor_profile = "ostiary-redis"  # "" leaves AppArmorProfile= out of the units
redis_expected_version = "7.0"  # Debian 12's Redis; only used before redis-server is installed
redis_disable_stock_service = True  # Debian's redis-server.service would hold port 6379
