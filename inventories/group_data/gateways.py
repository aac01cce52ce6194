"""Settings of the gateways group (nginx): every knob with its default.

Edit a value here to change it for every gateway; a host's own dict in the inventory wins.
The role (deploys/gateway.py) holds the same defaults, so deleting a line restores the default.
"""

# Host names the gateway answers to; also the SANs of its certificate.
gateway_server_names = ["api.example.internal"]

# Addresses nginx listens on for HTTPS (IPv6 in brackets).
gateway_listen_addresses = ["0.0.0.0", "[::]"]

# HTTPS port of the gateway (the firewall opens the same port).
gateway_https_port = 443

# The protected application, as scheme://host:port; the default is the built-in placeholder on
# 127.0.0.1.
gateway_upstream = "http://127.0.0.1:8080"

# Loopback port of the placeholder application (served only while gateway_upstream points at it).
gateway_placeholder_port = 8080

# TLS 1.3 cipher suites (OpenSSL Ciphersuites syntax, colon separated).
gateway_tls_ciphersuites = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

# Key-exchange groups offered (Mozilla modern: X25519, P-256, P-384).
gateway_tls_curves = "X25519:prime256v1:secp384r1"

# Lifetime of the gateway certificate issued by the internal CA (at most 90).
gateway_cert_days = 90

# Strict-Transport-Security max-age in seconds (two years).
gateway_hsts_max_age = 63072000

# Content-Security-Policy header sent on every response.
gateway_content_security_policy = "default-src 'none'; frame-ancestors 'none'"

# Referrer-Policy header sent on every response.
gateway_referrer_policy = "no-referrer"

# DNS resolver nginx uses for OCSP stapling (only when the certificate names an OCSP responder).
gateway_resolver = "127.0.0.1"

# nginx worker processes; 0 means one per CPU of the host.
gateway_worker_processes = 0

# Connections per nginx worker; worker_rlimit_nofile and LimitNOFILE follow from it.
gateway_worker_connections = 4096

# Per-client request rate on the whole gateway (nginx limit_req rate).
gateway_request_rate = "50r/s"

# Requests a client may exceed the rate by before getting 429.
gateway_request_burst = 100

# The application's login route that issues sessions (rate-limited harder, not behind auth_request).
gateway_issue_location = "/login"

# Per-client request rate on the session issuance route.
gateway_issue_rate = "5r/s"

# Burst allowed on the session issuance route before 429.
gateway_issue_burst = 10

# Concurrent connections allowed per client address.
gateway_connections_per_ip = 100

# Largest request body accepted (nginx size syntax).
gateway_client_max_body_size = "1m"

# Size of each of the 4 buffers for long request headers; bounds the longest header line.
gateway_large_header_buffer = "8k"

# Longest bearer token nginx passes on; longer ones are MALFORMED.
gateway_max_token_length = 4096

# Seconds a client may take to send headers or body, or to read.
gateway_client_timeout = 10

# Seconds an idle client connection stays open.
gateway_keepalive_timeout = 15

# Seconds the gateway waits on the application.
gateway_app_timeout = 30

# Seconds to connect to the application.
gateway_app_connect_timeout = 2

# Idle keep-alive connections kept to the application per worker.
gateway_app_keepalive = 16

# Seconds the gateway waits for the daemon's answer (then 503).
gateway_sessiond_timeout = 2

# Seconds to connect to the daemon (then the next session node, or 503).
gateway_sessiond_connect_timeout = 1

# Idle keep-alive connections kept to the daemon per worker.
gateway_sessiond_keepalive = 32

# Pass the bearer token on to the application (default: only X-Session-Subject is passed).
gateway_forward_authorization = False

# Serve the daemon's /.well-known/jwks.json through the gateway.
gateway_publish_jwks = True

# User of the nginx worker processes.
gateway_nginx_user = "www-data"

# AppArmor profile named in nginx's unit drop-in; '' omits it.
gateway_apparmor_profile = "ostiary-nginx"

# TCP port of the daemon's public API on a session node (mutual TLS from gateways on other hosts).
sessiond_port = 8700

# Talk to session nodes on other hosts over mutual TLS (must match the session nodes' setting of the
# same name).
sessiond_server_tls = True
