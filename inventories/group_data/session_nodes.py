"""Settings of the session_nodes group (the session daemon): every knob with its default.

Edit a value here to change it for every session node; a host's own dict in the inventory wins.
The role (deploys/sessiond.py) holds the same defaults, so deleting a line restores the default.
"""

# Daemon worker processes; 0 means one per CPU of the host.
sessiond_workers = 0

# Client connections budgeted per worker; LimitNOFILE is sized from it, the workers and the store
# pools.
sessiond_connections_per_worker = 4096

# Token issuer (iss), checked exactly on validation.
sessiond_issuer = "https://sessions.example.internal"

# Token audiences (aud) the daemon issues for and accepts.
sessiond_audience = ["api"]

# Token kind issued: 'jwt' or 'opaque'.
sessiond_token_mode = "jwt"  # noqa: S105 - a token kind, not a secret

# JWT signing algorithm: ES256, RS256, EdDSA or HS256.
sessiond_algorithm = "ES256"

# Seconds a token lives.
sessiond_token_ttl = 900

# Opaque sessions: sliding inactivity limit in seconds (NIST AAL2: 1800).
sessiond_idle_timeout = 1800

# No session outlives this many seconds (NIST AAL2: 43200).
sessiond_absolute_timeout = 43200

# Leeway in seconds for exp/nbf/iat (the daemon refuses more than 300).
sessiond_clock_skew = 60

# Seconds per store operation; slower answers fail closed with 503.
sessiond_store_timeout = 0.25

# Redis connections per store and worker.
sessiond_store_pool_size = 64

# Connections per store and worker opened at start-up, so that requests never wait for a connection
# to be set up (at most sessiond_store_pool_size).
sessiond_store_warm_connections = 4

# Store P99 budget checked by 'ostiary doctor'.
sessiond_latency_budget_ms = 5.0

# Seconds a validation result is reused locally (0 disables, at most 5).
sessiond_cache_ttl = 2.0

# Entries in the local validation cache.
sessiond_cache_max_entries = 100000

# How readiness checks clock sync: 'timedatectl' (kernel sync flag, works with chrony's cmdport 0),
# 'chrony' or 'none'.
sessiond_clock_check = "timedatectl"

# Largest clock offset in seconds still counted as synchronised.
sessiond_clock_max_offset = 1.0

# Daemon log level: debug, info, warning or error.
sessiond_log_level = "info"

# Seconds SIGTERM waits for in-flight requests.
sessiond_drain_timeout = 10.0

# Mode of the daemon's unix sockets (group: the daemon's group).
sessiond_socket_mode = "0660"

# TCP port of the public API when gateways are on other hosts.
sessiond_port = 8700

# Admin API address (unix:/path or 127.0.0.1:port); never public.
sessiond_admin_listen = "unix:/run/ostiary/admin.sock"

# Serve the public API over mutual TLS when gateways are on other hosts.
sessiond_server_tls = True

# The daemon's [oidc] section (enabled, issuer, audience, jwks_url or jwks_file, algorithms); empty
# keeps OIDC exchange off.
sessiond_oidc = {}

# RFC 7662/7009 clients: client id -> 'sha256:<hex of the secret>'.
sessiond_clients = {}

# AppArmor profile named in the unit (AppArmorProfile=); '' omits it.
sessiond_apparmor_profile = "ostiary-sessiond"

# Extra addresses or CIDRs the daemon may talk to (IPAddressAllow=), e.g. an OIDC provider's JWKS host
# or a DNS resolver; gateways, redis nodes and loopback are always allowed.
sessiond_allowed_networks = []

# Directory on the control node (relative to the project) where the wheelhouse is built.
sessiond_wheelhouse = ".ostiary/wheelhouse"
