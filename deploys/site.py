"""The whole session stack: ``pyinfra inventories/<inventory>.py deploys/site.py``.

Every host gets the host roles (base, chrony, firewall, apparmor) and the keys it needs; then each
service role runs on the hosts of its group. A host may be in several groups: one host in all
three is the single-host profile. The order matters: keys before the services that read them,
Redis before the daemon that connects to it, the daemon before the gateway that asks it.
"""

from __future__ import annotations

from pyinfra import host

from deploys import common
from deploys.apparmor import apparmor
from deploys.base import base
from deploys.chrony import chrony
from deploys.firewall import firewall
from deploys.gateway import gateway
from deploys.keys import keys
from deploys.redis import redis
from deploys.sessiond import sessiond

base()
chrony()
firewall()
apparmor()
keys()

if common.GROUP_REDIS_NODES in host.groups:
    redis()
if common.GROUP_SESSION_NODES in host.groups:
    sessiond()
if common.GROUP_GATEWAYS in host.groups:
    gateway()
