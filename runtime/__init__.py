"""The robot side: control loop, chunk scheduling, safety filter, episode session, links, recorder.

Modules here import numpy only at load; torch-dependent pieces import it lazily.
"""
