"""The one exception type for mistakes a user can fix (bad path, binding, shape...)."""


class UserError(Exception):
  """A configuration or input problem; entry points print its message and exit 2.

  The message must name the offending file, binding or value and say how to fix it.
  """


class TrainingStopped(UserError):
  """The run cannot go on (e.g. its loss became NaN); entry points print the message and
  exit with `exit_status`. Nothing bad was saved: the newest checkpoint is intact."""

  exit_status = 1


def require_macros(**values) -> None:
  """Raises a UserError naming the first gin macro (keyword) whose value is unset."""
  for macro, value in values.items():
    if not value:
      raise UserError(
        f'{macro} is not set; pass e.g. --gin.{macro}="\'...\'" '
        '(note the inner quotes: gin strings are Python literals).'
      )
