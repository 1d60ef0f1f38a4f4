"""Tests of vitzoo.ops.local_conv."""
