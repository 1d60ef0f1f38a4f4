"""Tests of vitzoo.ops.delta_rule."""
