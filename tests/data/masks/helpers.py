import torch


def components(mask: torch.Tensor) -> int:
    """4-connected components of a [G, G] bool mask."""
    grid = mask.shape[0]
    seen = torch.zeros_like(mask)
    count = 0
    for r in range(grid):
        for c in range(grid):
            if mask[r, c] and not seen[r, c]:
                count += 1
                stack = [(r, c)]
                seen[r, c] = True
                while stack:
                    a, b = stack.pop()
                    for da, db in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                        x, y = a + da, b + db
                        if 0 <= x < grid and 0 <= y < grid and mask[x, y] and not seen[x, y]:
                            seen[x, y] = True
                            stack.append((x, y))
    return count
