"""Today's date in Toolformer's wording: "Today is Monday, January 30, 2023."

The names are spelled here rather than by strftime, whose day and month names follow the
process's locale.
"""

import datetime
from typing import Callable

from t5pt.tools import base

_DAYS = ('Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday', 'Sunday')
_MONTHS = (
  'January',
  'February',
  'March',
  'April',
  'May',
  'June',
  'July',
  'August',
  'September',
  'October',
  'November',
  'December',
)


class Calendar(base.Tool):
  """Today's date; the argument is ignored. `clock` gives today (tests inject one)."""

  def __init__(self, clock: Callable[[], datetime.date] = datetime.date.today):
    self.clock = clock

  def __call__(self, argument: str) -> str:
    del argument
    day = self.clock()
    return f'Today is {_DAYS[day.weekday()]}, {_MONTHS[day.month - 1]} {day.day}, {day.year}.'
