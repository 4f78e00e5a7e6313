"""Checks of configuration values where they enter, naming the binding at fault.

    num_updates = checks.integer('Trainer.num_updates', num_updates, minimum=1)
    rate = checks.number('Trainer.learning_rate', rate, minimum=0.0, strict=True)

Each raises ``errors.ConfigError`` with one line that names the binding, the value given and
what is expected. Gin parses ``1e5`` as a float: an integral float is taken as that integer.
"""
import numbers
from typing import Optional, Sequence

from meta_dataset_ext.errors import ConfigError


def integer(binding: str, value, minimum: Optional[int] = None) -> int:
  """``value`` as an int (>= ``minimum``), or ConfigError."""
  expected = 'an integer' + (f' >= {minimum}' if minimum is not None else '')
  if (isinstance(value, bool) or not isinstance(value, numbers.Real) or
      int(value) != value):
    raise ConfigError(f'{binding} = {value!r} must be {expected}.')
  value = int(value)
  if minimum is not None and value < minimum:
    raise ConfigError(f'{binding} = {value!r} must be {expected}.')
  return value


def number(binding: str, value, minimum: Optional[float] = None, strict: bool = False,
           maximum: Optional[float] = None) -> float:
  """``value`` as a float (> or >= ``minimum``, <= ``maximum``), or ConfigError."""
  bounds = []
  if minimum is not None:
    bounds.append(f'{">" if strict else ">="} {minimum}')
  if maximum is not None:
    bounds.append(f'<= {maximum}')
  expected = 'a number' + (f' {" and ".join(bounds)}' if bounds else '')
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
    raise ConfigError(f'{binding} = {value!r} must be {expected}.')
  if ((minimum is not None and (value <= minimum if strict else value < minimum)) or
      (maximum is not None and value > maximum)):
    raise ConfigError(f'{binding} = {value!r} must be {expected}.')
  return float(value)


def boolean(binding: str, value) -> bool:
  if not isinstance(value, bool):
    raise ConfigError(f'{binding} = {value!r} must be True or False.')
  return value


def choice(binding: str, value, choices: Sequence):
  if value not in choices:
    raise ConfigError(f'{binding} = {value!r} must be one of {", ".join(map(repr, choices))}.')
  return value
