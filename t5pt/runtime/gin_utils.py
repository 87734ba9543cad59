"""t5x-style gin command line: --gin_file, --gin_bindings, --gin.NAME=value, search paths.

Gin's own errors are turned into UserErrors naming the binding, and a `--gin.NAME=...`
for a macro that no gin file defines (almost always a typo, which gin would otherwise
accept silently) is rejected with the closest known names.
"""

import contextlib
import difflib
import io
import logging as logging_std
import os
import re
import sys
from typing import Sequence

from absl import app, flags, logging

import gin
from t5pt.runtime import backend_check
from t5pt.runtime import checks
from t5pt.runtime import distributed
from t5pt.runtime.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GIN_DIR = os.path.join(REPO_ROOT, 'gin')

# The half of a gin file that only real t5x reads (see `_t5x_half_read_as_empty`).
T5X_HALF_DIR = os.path.realpath(os.path.join(GIN_DIR, 't5x'))


def define_flags() -> None:
  """Defines t5x's gin flags and multi-host flags for a t5pt entry point (once). Library
  modules define no flags: t5x's programs import them and define flags of these names."""
  for define, name, help_text in (
    (flags.DEFINE_multi_string, 'gin_file', 'Gin config files, parsed in order.'),
    (flags.DEFINE_multi_string, 'gin_bindings', "Individual gin bindings, e.g. 'X = 1'."),
    (flags.DEFINE_list, 'gin_search_paths', 'Directories searched for gin files and includes.'),
  ):
    if name not in flags.FLAGS:
      define(name, [], help_text)
  distributed.define_flags()


_MACRO = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=')


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """Turns t5x's `--gin.NAME=value` shorthand into `--gin_bindings=NAME = value`."""
  out = []
  for arg in argv:
    if arg.startswith('--gin.'):
      name, sep, value = arg[len('--gin.') :].partition('=')
      if not sep:
        raise UserError(
          f'{arg!r} has no value; write --gin.{name}=VALUE (strings need '
          "inner quotes: --gin.MODEL_DIR=\"'/runs/x'\")."
        )
      out.append(f'--gin_bindings={name} = {value}')
    else:
      out.append(arg)
  return out


class _QuietSearchMisses(logging_std.Filter):
  """Gin logs an ERROR for every search path an include is *not* in; drop those."""

  def filter(self, record):
    return not str(record.msg).startswith('Path not found')


def defined_macros() -> set[str]:
  return {scope for scope, selector in gin.config._CONFIG if selector == 'gin.macro'}  # pylint: disable=protected-access


def _is_t5x_half(path: str) -> bool:
  return os.path.isfile(path) and os.path.dirname(os.path.realpath(path)) == T5X_HALF_DIR


@contextlib.contextmanager
def _t5x_half_read_as_empty():
  """While parsing for t5pt's runner, gin reads the files of gin/t5x/ as empty.

  One gin file per size and method serves both runners: it includes run.gin (t5pt's
  runner: `trainer.train` and friends, which real t5x imports but never calls) and
  t5x/tuning.gin (real t5x's `MODEL`, its run configs' settings), which imports t5x.
  t5pt's runner never imports t5x, so it skips that half, through a gin file reader
  placed before gin's own."""
  readers = gin.config._FILE_READERS  # pylint: disable=protected-access
  reader = (lambda path: io.StringIO(''), _is_t5x_half)
  readers.insert(0, reader)
  try:
    yield
  finally:
    readers.remove(reader)


def _resolve(path: str, search_paths: Sequence[str]) -> str:
  for base in ['', *search_paths]:
    candidate = os.path.join(base, path)
    if os.path.exists(candidate):
      return candidate
  raise UserError(
    f'--gin_file={path!r} not found (searched the working directory and {list(search_paths)}).'
  )


def parse(
  gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = ()
) -> None:
  """Parses files then bindings into gin's global config, with user-facing errors."""
  search_paths = [*search_paths, REPO_ROOT, GIN_DIR]
  for path in search_paths:
    gin.add_config_file_search_path(path)
  if not gin_files:
    raise UserError('No --gin_file given; try --gin_file=gin/t5_1_1_tiny_prompt.gin.')
  quiet = _QuietSearchMisses()
  logging_std.getLogger().addFilter(quiet)
  try:
    with _t5x_half_read_as_empty():
      gin.parse_config_files_and_bindings(
        [_resolve(f, search_paths) for f in gin_files], None, finalize_config=False
      )
  except (ValueError, IOError, SyntaxError) as e:
    # Gin puts the file:line and the line's text on lines of their own: one line here.
    where = ' '.join(line.strip() for line in str(e).splitlines() if line.strip())
    raise UserError(f'Invalid gin config: {where}') from e
  finally:
    logging_std.getLogger().removeFilter(quiet)
  parse_bindings(bindings)


def parse_bindings(bindings: Sequence[str]) -> None:
  """Parses --gin.NAME=value / --gin_bindings after the files, with user-facing errors."""
  known = defined_macros()
  for binding in bindings:
    match = _MACRO.match(binding)
    if match and match.group(1) not in known:
      name = match.group(1)
      close = difflib.get_close_matches(name, sorted(known), n=3)
      hint = f' Did you mean {close}?' if close else ''
      raise UserError(
        f'Binding {binding!r} sets macro {name}, which no gin file '
        f'defines, so it would have no effect.{hint}'
      )
    try:
      gin.parse_config(binding)
    except (ValueError, SyntaxError) as e:
      hint = ''
      if '=' in binding and not re.search(r"=\s*(['\"\[{(@%]|-?[\d.]|None|True|False)", binding):
        hint = ' Gin values are Python literals: ' + checks.QUOTES + '.'
      # Gin's location lines repeat the binding, which the message already names.
      raise UserError(f'Invalid gin binding {binding!r}: {str(e).splitlines()[0]}{hint}') from e


def run(main_fn, parse_gin_flags: bool = True, default_gin_files: Sequence[str] = ()) -> None:
  """Parses the gin flags absl has read (unless told not to; `default_gin_files` when no
  --gin_file was given), joins the other processes of a multi-host run, calls main_fn(),
  and exits with status 2 and a one-paragraph message on a UserError."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Keep the progress bar readable.
  try:
    if parse_gin_flags:
      parse(
        flags.FLAGS.gin_file or list(default_gin_files),
        flags.FLAGS.gin_bindings,
        flags.FLAGS.gin_search_paths,
      )
    distributed.initialize()
    if distributed.is_writer():
      backend_check.warn_if_accelerator_unused()
      distributed.warn_if_unprotected()
    main_fn()
  except UserError as e:
    _exit_with(e)


def app_run(main) -> None:
  """absl's app.run for t5pt entry points, after the `--gin.NAME=value` rewrite; a flag
  absl cannot parse exits 2 with one line, like every other bad value."""
  define_flags()
  try:
    argv = rewrite_gin_args(sys.argv)
    flags.FLAGS(argv)
  except UserError as e:
    _exit_with(e)
  except flags.Error as e:
    _exit_with(UserError(f'{e} (--helpfull lists the flags).'))
  app.run(main, argv=argv)


def _exit_with(error: UserError) -> None:
  # Gin appends "In call to configurable ..." to exceptions passing through it; the
  # message already names the binding, so keep only the user's part.
  message = str(error).split('\n  In call to configurable')[0]
  print(f'\nt5pt: error: {message}', file=sys.stderr)
  sys.exit(getattr(error, 'exit_status', 2))
