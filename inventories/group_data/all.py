"""Settings every host gets: the base, chrony and firewall roles.

Each name is inventory data read by a role; the value shown is the role's default (the role's
``DEFAULTS``), so deleting a line changes nothing. Edit a value here for every host, or override it
in another group's file or per host in the inventory.
"""

# --- base: kernel and network sysctls -------------------------------------------------------------
sysctl_rp_filter = 1  # reverse-path filter: 1 strict, 2 loose (multi-homed hosts, asymmetric routes)
sysctl_somaxconn = 4096  # listen backlog ceiling for nginx, the daemon and Redis
sysctl_tcp_max_syn_backlog = 4096  # half-open connections kept per listener
sysctl_ptrace_scope = 2  # kernel.yama.ptrace_scope: 2 = only root may ptrace
sysctl_extra = {}  # more sysctls, e.g. {"net.ipv4.tcp_keepalive_time": 600}
thp_disabled = True  # transparent huge pages off (Redis latency and fork memory)
disabled_protocols = ["dccp", "sctp", "rds", "tipc"]  # kernel protocol modules that may never load
core_dumps_disabled = True  # no core dumps for any login (hard limit 0); the services set LimitCORE=0

# --- base: sshd (keys only; the deploy refuses settings that would lock out its own connection) --
ssh_permit_root_login = "prohibit-password"  # or "no" when pyinfra logs in as a sudo user
ssh_allow_users = []  # e.g. ["deploy", "alice"]; empty = any user with a key
ssh_ciphers = [
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",  # the CTR and GCM ciphers are what pyinfra's client (paramiko) speaks
    "aes192-ctr",
    "aes128-ctr",
]
ssh_kex_algorithms = [
    "sntrup761x25519-sha512@openssh.com",  # post-quantum hybrid (OpenSSH 9)
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
]
ssh_macs = ["hmac-sha2-512-etm@openssh.com", "hmac-sha2-256-etm@openssh.com", "umac-128-etm@openssh.com"]
ssh_host_key_algorithms = ["ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256"]
ssh_pubkey_algorithms = [  # user key types accepted: no SHA-1 ssh-rsa signatures, no DSA
    "ssh-ed25519",
    "sk-ssh-ed25519@openssh.com",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-256",
]
ssh_max_auth_tries = 3
ssh_login_grace_time = 30  # seconds
ssh_client_alive_interval = 300  # seconds
ssh_client_alive_count_max = 2
ssh_allow_tcp_forwarding = False
ssh_lockout_guard = True  # leave on: refuses sshd settings that would lock out this deploy

# --- base: journald and host checks ---------------------------------------------------------------
journald_system_max_use = "1G"
journald_max_retention = "90day"
openssl_min_version = "3.0"  # the deploy fails on an older OpenSSL
entropy_min_bits = 256  # the deploy fails if the kernel's random pool is below this

# --- chrony -----------------------------------------------------------------------------------------
chrony_servers = [  # stratum-1 sources; nts=True authenticates them (NTS, TCP 4460 + UDP 123)
    {"host": "ptbtime1.ptb.de", "nts": True},
    {"host": "ptbtime2.ptb.de", "nts": True},
    {"host": "nts.netnod.se", "nts": True},
    {"host": "ntppool1.time.nl", "nts": True},
]
chrony_minsources = 2  # sources that must agree before the clock is adjusted
chrony_maxdistance = 1.0  # seconds of root distance a source may have
chrony_makestep_threshold = 1.0  # step (not slew) above this offset ...
chrony_makestep_limit = 3  # ... only in the first updates after boot
chrony_maxchange_ignore = 2  # jumps over 300 s (the daemon's tolerance) ignored this often, then exit
chrony_leapsectz = "right/UTC"
chrony_require_sync = False  # True: an unsynchronised host fails the deploy instead of a warning
chrony_max_offset = 1.0  # seconds; larger = reported as unsynchronised (the daemon's clock.max_offset)

# --- firewall ---------------------------------------------------------------------------------------
ssh_admin_networks = []  # CIDRs that may SSH in (rate-limited), e.g. ["192.0.2.0/24", "2001:db8::/48"]
firewall_control_addresses = []  # extra control-node addresses (the detected one is always allowed)
firewall_ssh_rate = "6/minute"  # new SSH connections per source address
firewall_ssh_burst = 10
firewall_icmp_rate = "5/second"  # echo requests answered
firewall_icmp_burst = 10
firewall_ntp_servers = []  # restrict outgoing NTP/NTS-KE to these addresses; empty = any
firewall_extra_tcp_ports = []  # more TCP ports open to everyone, e.g. [80]
firewall_log_dropped = True  # log dropped packets (rate-limited, prefix "ostiary-drop: ")
firewall_confirm_timeout = 60  # seconds to confirm new rules over a new SSH connection, else rollback
firewall_manage_packages = True  # install iptables + iptables-persistent (off: the image has them)
firewall_ssh_port = 0  # port sshd listens on; 0 = the port the deploy's SSH connection arrived on

# --- shared by the redis role, the firewall and the daemon's store URLs ------------------------------
redis_tls_ports = {"sessions": 6379, "revocations": 6380}  # TLS port of each Redis store
