int vmkit_shim_version(void) { return 1; }
