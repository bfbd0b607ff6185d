"""Fixture agent: allocates memory in 8 MB steps (touching every page) until it fails."""

chunks = []
step = 8 * 1024 * 1024
for i in range(1, 10_000):
    chunks.append(bytearray(step))  # MemoryError once past RLIMIT_DATA
    if i % 4 == 0:
        print(f"allocated {i * 8} MB", flush=True)
