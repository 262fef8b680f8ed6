"""The one exception type that `main` turns into a single-line message and a non-zero exit."""


class UserError(Exception):
  """Bad input from the user (a file, a folder, a config field): the message names it."""
