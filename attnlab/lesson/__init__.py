"""What the workbooks teach with: cache arithmetic, widgets, the KV-cache benchmark, the released
checkpoints' formats, workbook 06's models, and workbook 07's Triton set-up and paged cache."""
