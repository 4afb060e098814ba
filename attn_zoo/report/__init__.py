"""Plots, tables and the HTML report, made from stored rows."""
