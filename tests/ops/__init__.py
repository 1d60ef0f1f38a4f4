"""Tests of vitzoo.ops."""
