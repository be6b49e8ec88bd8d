"""``python -m synthquant.atlases``: build the template/atlas caches and list them."""

from synthquant.atlases import cache_dir, prepare

if __name__ == "__main__":
    paths = prepare()
    print(f"synthquant atlases: {len(paths)} files ready in {cache_dir()}")
