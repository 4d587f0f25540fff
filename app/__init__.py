"""The top of the stack: the `nearfield` command and the Qt viewer over recorded drives."""
