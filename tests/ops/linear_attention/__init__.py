"""Tests of vitzoo.ops.linear_attention."""
