"""tandem: a runtime for post-training VLA policies on real robots.

The component packages live in top-level folders of the repository and are installed as
subpackages: ``tandem.hardware``, ``tandem.runtime``, ``tandem.policies``, ``tandem.teleop``,
``tandem.value``. Importing ``tandem`` imports nothing heavy.
"""

__version__ = "0.1.0"
