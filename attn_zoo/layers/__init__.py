"""Shared building blocks: attention kernels, window helpers, stems, downsamplers, heads, position encodings."""
