"""The qemu VM lab: base image, VMs, time source, inventory and the `ostiary lab` command."""
