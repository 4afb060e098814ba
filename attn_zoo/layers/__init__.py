"""Shared building blocks: attention kernels, windows, stems, downsamplers, heads, position encodings."""
