"""What the workbooks teach with: cache arithmetic, widgets, the KV-cache benchmark, the released
checkpoints' formats, workbook 06's models."""
