"""A local fleet on one machine: `helix up`, its plans, process launching and ready files, and `helix profile`."""
