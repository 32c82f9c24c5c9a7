// Placeholder until the rootfs module lands.
