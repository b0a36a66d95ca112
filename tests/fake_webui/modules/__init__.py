"""A fake of the webui's ``modules`` package (v1.10.1), for dbchar's tests. See ../README.md."""
