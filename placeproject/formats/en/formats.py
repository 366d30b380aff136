"""Dates as moderators need them: to the second, in one unambiguous form.

The history's time bounds are inclusive to the second, so a list shown to the
minute ("10:02 a.m.") would hide which placements an `until` of 10:02 keeps.
"""

DATETIME_FORMAT = "Y-m-d H:i:s"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
