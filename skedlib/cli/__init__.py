"""The operator CLI ``sked``."""
