"""The one exception type for problems a user causes (bad YAML, unknown device, bad pattern,
missing checkpoint, malformed LUT). The CLI prints its message as one line and exits 2."""


class UserError(ValueError):
    """Raised with a one-line message that names the offending key, file or value."""
