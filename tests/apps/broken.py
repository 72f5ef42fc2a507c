"""A handler module that fails to import."""

raise RuntimeError("this handler module is broken on purpose")
