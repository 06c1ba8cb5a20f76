"""What the workbooks teach with: cache arithmetic, widgets, the KV-cache benchmark, workbook 06's models."""
