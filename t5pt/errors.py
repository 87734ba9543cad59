"""The one exception type for mistakes a user can fix (bad path, binding, shape...)."""


class UserError(Exception):
  """A configuration or input problem; entry points print its message and exit 2.

  The message must name the offending file, binding or value and say how to fix it.
  """
