"""What a warehouse plan costs: aisle distance to each robot's target, and getting close to others or shelves.

The progress term is the geodesic (aisle) distance, not the straight line: a robot whose target is
behind a shelf block must see that going around it is progress. ``DistanceFields`` holds, for every
target point, the shortest-path distance from every cell of a grid over the floor (computed once
per layout, by Gauss-Seidel sweeps of a 32-neighbour stencil over all targets at once), looked up
bilinearly. The fields keep to the right in the aisles between shelf columns (a move against its half
of the aisle costs more), so robots meeting head-on are already on opposite sides. The proximity
terms charge pairs of agents closer than two radii plus a margin, and agents closer to a shelf or
wall than one radius plus a margin.

Shapes: ``T`` target points, ``GY`` x ``GX`` grid cells, ``N`` robots, ``K`` candidates, ``O`` other
agents, ``R`` shelves and walls; ``...`` any leading dims.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from worldmodel.envs.warehouse import DISTANCE_COST, ROBOT_RADIUS
from worldmodel.envs.warehouse_layout import Layout, nearest_on_rects

_MATCH = 1e-4
"""Metres within which a task point is the same target point (observations are float32)."""
_MAX_ROUNDS = 64
"""Bound on the rounds of four sweeps; each round fixes at least one more bend of every shortest path."""


_REACH = 3
"""Cells a stencil move spans at most along each axis."""


def _stencil() -> list[tuple[int, int]]:
    """Moves (dy, dx) of the 32-neighbour stencil (every direction to a cell within ``_REACH``): its
    paths are within 1.3% of a straight line at any angle."""
    return [(dy, dx) for dy in range(-_REACH, _REACH + 1) for dx in range(-_REACH, _REACH + 1)
            if (dy, dx) != (0, 0) and math.gcd(abs(dy), abs(dx)) == 1]


def _crossed(dy: int, dx: int) -> set[tuple[int, int]]:
    """Cells (relative to the arrival cell) that the segment of move (dy, dx) passes through, ends excluded."""
    cells = set()
    for f in np.arange(1, 32) / 32:
        cy, cx = -dy * (1 - f), -dx * (1 - f)
        ys = {math.floor(cy + 0.5), math.ceil(cy - 0.5)}  # both cells where the point is on their border
        xs = {math.floor(cx + 0.5), math.ceil(cx - 0.5)}
        cells |= {(y, x) for y in ys for x in xs}
    return cells - {(0, 0), (-dy, -dx)}


class DistanceFields:
    """Geodesic distances to target points over a grid of the floor, for robots of ``clearance`` radius.

    A cell is free when its centre is at least ``clearance`` from every shelf and wall; a move of the
    stencil is allowed between free cells whose straight segment crosses only free cells. Blocked
    cells hold their distance through the nearest free cells (growing inwards), so a position pushed
    slightly into a shelf still has a slope out of it. Fields exist for the layout's pick points and
    stations from the start; other points get theirs when first asked for (``index``).
    """

    def __init__(self, layout: Layout, clearance: float = ROBOT_RADIUS, cell: float = 0.25,
                 device: torch.device | str = "cpu", lane_penalty: float = 0.0) -> None:
        if not cell > 0 or not clearance >= 0 or not lane_penalty >= 0:
            raise ValueError(f"cell must be > 0, clearance and lane_penalty >= 0, got cell={cell}, "
                             f"clearance={clearance}, lane_penalty={lane_penalty}")
        self.layout, self.cell, self.device = layout, float(cell), torch.device(device)
        self.lane_penalty = float(lane_penalty)
        self.shape = (max(2, math.ceil(layout.height / cell)), max(2, math.ceil(layout.width / cell)))  # (GY, GX)
        gy, gx = self.shape
        xs, ys = (np.arange(gx) + 0.5) * cell, (np.arange(gy) + 0.5) * cell
        centres = np.stack(np.meshgrid(xs, ys), axis=-1)  # (GY, GX, 2)
        gap = np.linalg.norm(centres[..., None, :] - nearest_on_rects(centres, layout.obstacles), axis=-1).min(-1)
        self.free = gap >= clearance  # (GY, GX)
        self.lanes = aisle_lanes(layout, centres)  # (GY, GX)
        self._moves = self._move_costs()
        self._layers = self._blocked_layers()
        self.points = torch.empty(0, 2, device=self.device)
        self.field = torch.empty(0, gy, gx, device=self.device)
        self._add(np.concatenate([layout.picks, layout.stations]))

    def _move_costs(self) -> list[tuple[int, int, torch.Tensor]]:
        """Per move (dy, dx) of the stencil: the cost of arriving at each cell by it, (GY, GX), inf where
        the move leaves or enters a blocked cell or crosses one, (1 + ``lane_penalty``) times its length
        where it takes a robot against the cell's lane. The fields grow outwards from the target, so a
        robot following one travels each move backwards: (-dy, -dx)."""
        gy, gx = self.shape
        r = _REACH
        pad = np.pad(self.free, r, constant_values=False)  # off the grid counts as blocked
        at = lambda oy, ox: pad[r + oy:r + oy + gy, r + ox:r + ox + gx]  # noqa: E731  cell q + (oy, ox)
        moves = []
        for dy, dx in _stencil():
            ok = self.free & at(-dy, -dx)
            for oy, ox in _crossed(dy, dx):
                ok = ok & at(oy, ox)
            against = (self.lanes != 0) & (np.sign(-dy) == -self.lanes) if dy else np.zeros_like(ok)
            cost = np.where(ok, self.cell * math.hypot(dy, dx) * np.where(against, 1 + self.lane_penalty, 1), np.inf)
            moves.append((dy, dx, torch.tensor(cost, dtype=torch.float32, device=self.device)))
        return moves

    def _blocked_layers(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Blocked cells in layers from the free cells inwards: per layer its flat cells (F,), the flat
        cells one stencil move away (F, 32) and the cost of coming from each (F, 32), inf unless that
        cell is free or in an earlier layer. Each layer reads only earlier ones, so a blocked cell's
        distance comes through the free cells nearest to it, never along the inside of a shelf."""
        gy, gx = self.shape
        moves = np.array(_stencil())  # (32, 2) [dy, dx]
        length = self.cell * np.hypot(moves[:, 0], moves[:, 1])
        done, layers = self.free.copy(), []
        while not done.all():
            ys, xs = np.nonzero(~done)
            sy, sx = ys[:, None] - moves[:, 0], xs[:, None] - moves[:, 1]  # (B, 32) source cells
            on = (sy >= 0) & (sy < gy) & (sx >= 0) & (sx < gx)
            sy, sx = sy.clip(0, gy - 1), sx.clip(0, gx - 1)
            cost = np.where(on & done[sy, sx], length, np.inf)
            front = np.isfinite(cost).any(-1)
            if not front.any():  # a blocked region no free cell reaches: it keeps inf
                break
            t = lambda a, dtype=torch.long: torch.tensor(a[front], dtype=dtype, device=self.device)  # noqa: E731
            layers.append((t(ys * gx + xs), t(sy * gx + sx), t(cost, torch.float32)))
            done[ys[front], xs[front]] = True
        return layers

    def index(self, points: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The field of each of ``points`` (N, 2): (N,) long; points without one get theirs computed now."""
        p = torch.as_tensor(points, dtype=torch.float32, device=self.device).reshape(-1, 2)
        if not bool(torch.isfinite(p).all()):
            raise ValueError("target points must be finite")
        miss, idx = self._match(p)
        if bool(miss.any()):
            self._add(np.unique(p[miss].cpu().numpy(), axis=0))
            miss, idx = self._match(p)
        return idx

    def _match(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(self.points) == 0:
            none = torch.zeros(len(p), dtype=torch.long, device=p.device)
            return none == 0, none
        gap, idx = (p[:, None] - self.points[None]).abs().amax(-1).min(-1)  # (N,)
        return gap > _MATCH, idx

    def lookup(self, pos: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Bilinear geodesic distance at ``pos`` (..., 2) to the target ``index`` (broadcast to ...): (...)."""
        gy, gx = self.shape
        fx = (pos[..., 0] / self.cell - 0.5).clamp(0, gx - 1)
        fy = (pos[..., 1] / self.cell - 0.5).clamp(0, gy - 1)
        x0, y0 = fx.floor().long().clamp(max=gx - 2), fy.floor().long().clamp(max=gy - 2)
        wx, wy = fx - x0, fy - y0
        base = index * (gy * gx) + y0 * gx + x0
        flat = self.field.view(-1)
        top = torch.lerp(flat[base], flat[base + 1], wx)
        bottom = torch.lerp(flat[base + gx], flat[base + gx + 1], wx)
        return torch.lerp(top, bottom, wy)

    def _add(self, points: np.ndarray) -> None:
        """Compute the fields of ``points`` (T, 2) and append them."""
        p = torch.tensor(points, dtype=torch.float32, device=self.device).reshape(-1, 2)
        field = self._seeded(p)
        for _ in range(_MAX_ROUNDS):
            if not self._round(field):
                break
        flat = field.view(len(p), -1)
        for cells, sources, cost in self._layers:  # blocked cells, from the free cells inwards
            flat[:, cells] = (flat[:, sources] + cost).amin(-1)  # (T, F)
        finite = torch.isfinite(field)
        worst = torch.where(finite, field, 0.0).amax(dim=(1, 2), keepdim=True)
        field = torch.where(finite, field, worst + self.cell)  # unreachable cells: farther than any reachable
        self.points, self.field = torch.cat([self.points, p]), torch.cat([self.field, field])

    def _seeded(self, p: torch.Tensor) -> torch.Tensor:
        """(T, GY, GX): inf, but the straight distance at the free cells around each target point."""
        gy, gx = self.shape
        field = torch.full((len(p), gy, gx), math.inf, device=self.device)
        free = torch.as_tensor(self.free, device=self.device)
        iy = (p[:, 1] / self.cell).floor().long().clamp(0, gy - 1)
        ix = (p[:, 0] / self.cell).floor().long().clamp(0, gx - 1)
        rows = torch.arange(len(p), device=self.device)
        for oy in (-1, 0, 1):  # the 3 x 3 cells around each point: the point is seen from all of them
            for ox in (-1, 0, 1):
                y, x = (iy + oy).clamp(0, gy - 1), (ix + ox).clamp(0, gx - 1)
                centre = torch.stack([(x + 0.5) * self.cell, (y + 0.5) * self.cell], -1)
                d = torch.where(free[y, x], (centre - p).norm(dim=-1), math.inf)
                field[rows, y, x] = torch.minimum(field[rows, y, x], d)
        return field

    def _round(self, field: torch.Tensor) -> bool:
        """One Gauss-Seidel sweep down, up, right and left, in place; True when anything changed.

        Each line (a row, or a column) takes the best arrival from the three lines before it in the
        sweep's direction, all targets and cells of the line at once.
        """
        changed = False
        for axis, forward in ((1, True), (1, False), (2, True), (2, False)):
            view = field if axis == 1 else field.transpose(1, 2)  # lines along dim 1
            lines = view.shape[1]
            moves = []  # (lines back, cells across, arrival cost (lines, W)) of the moves this sweep takes
            for dy, dx, costs in self._moves:
                step, across, cost = (dy, dx, costs) if axis == 1 else (dx, dy, costs.T)
                if step != 0 and (step > 0) == forward:
                    moves.append((step, across, cost))
            order = range(lines) if forward else range(lines - 1, -1, -1)
            for i in order:
                best = view[:, i].clone()
                for step, across, cost in moves:
                    j = i - step
                    if not 0 <= j < lines:
                        continue
                    src = _shifted(view[:, j], across)  # (T, W) value at the source cell of each arrival
                    best = torch.minimum(best, src + cost[i])
                if not torch.equal(best, view[:, i]):
                    view[:, i] = best
                    changed = True
        return changed


def _shifted(line: torch.Tensor, across: int) -> torch.Tensor:
    """``line`` (T, W) moved by ``across`` cells: out[:, x] = line[:, x - across], inf off the line."""
    if across == 0:
        return line
    out = torch.full_like(line, math.inf)
    if across > 0:
        out[:, across:] = line[:, :-across]
    else:
        out[:, :across] = line[:, -across:]
    return out


def aisle_lanes(layout: Layout, centres: np.ndarray) -> np.ndarray:
    """Keep-right lanes of the aisles between shelf columns at ``centres`` (..., 2): +1 where robots travel up
    (+y: the aisle's right half, x beyond its middle), -1 where they travel down, 0 outside those aisles (the
    cross aisles and the staging area stay two-way)."""
    x, y, sh = centres[..., 0:1], centres[..., 1:2], layout.shelves  # (..., 1), (R, 4)
    rows = (y >= sh[:, 1]) & (y <= sh[:, 3])  # (..., R): shelves level with the point
    left = np.where(rows & (sh[:, 2] <= x), sh[:, 2], 0.0).max(-1)  # the aisle's edges, walls included
    right = np.where(rows & (sh[:, 0] >= x), sh[:, 0], layout.width).min(-1)
    aisle = rows.any(-1) & ~(rows & (x > sh[:, 0]) & (x < sh[:, 2])).any(-1)
    return np.where(aisle, np.where(x[..., 0] > (left + right) / 2, 1, -1), 0)


@dataclass(frozen=True)
class CostWeights:
    """Weights of the warehouse planning costs (rewards are their negatives). With robots that have bumpers and
    each robot scored against the others' plans, these weights reach every closed-loop target of
    docs/warehouse.md; a progress weight of 1, 2 or 4 delivered 4-18% more at 2-3.5x the collisions (shielded,
    floor seeds 0-2, one torch thread). The measurements in the fields' notes were taken on floors without
    bumpers, each robot scored in the joint samples."""

    progress: float = 3 * DISTANCE_COST
    """Per metre of aisle distance from a robot to its target, per step: 3x the env's distance cost. At the
    env's own (0.1), 1 cm inside the margin cost as much as 2 m of distance, and a robot behind another
    herded it back down the aisle; with 0.3 and ``margin`` 0.1 the coordinated planner delivered 52 -> 65
    per floor episode (mean over floor seeds 0-2, 50 robots, 600 ticks), collisions 4x to 5x below
    constant-velocity planning's still."""
    contact: float = 10.0
    """Per predicted contact (another agent within two radii, or a shelf or wall within one), per step."""
    proximity: float = 20.0
    """Per metre inside the margin around a contact, per step: a slope that keeps plans clear."""
    margin: float = 0.1
    """Metres beyond contact that agents keep between each other and from shelves."""
    lane_penalty: float = 3.0
    """Aisle distance against a lane costs (1 + this) per metre (``aisle_lanes``): measured with ``progress``
    0.3 and ``margin`` 0.1, 0 -> 3 kept deliveries (62/70/64 -> 61/67/68 over floor seeds 0-2) and cut shelf
    collisions from 5/1/4 to 1/1/1."""

    def __post_init__(self) -> None:
        for name in ("progress", "contact", "proximity", "margin", "lane_penalty"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


class WarehouseCosts:
    """The per-robot, per-step planning costs on one floor (all return rewards: minus the costs)."""

    def __init__(self, layout: Layout, weights: CostWeights = CostWeights(), cell: float = 0.25,
                 device: torch.device | str = "cpu") -> None:
        self.layout, self.weights = layout, weights
        self.fields = DistanceFields(layout, ROBOT_RADIUS, cell, device, weights.lane_penalty)
        self.rects = torch.tensor(layout.obstacles, dtype=torch.float32, device=device)  # (R, 4)

    def targets(self, task: torch.Tensor) -> torch.Tensor:
        """The field index of each robot's task point (N, 2): (N,) long."""
        return self.fields.index(task)

    def progress(self, pos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Minus the weighted aisle distance from ``pos`` (..., N, 2) to each robot's ``target`` (N,): (..., N)."""
        return -self.weights.progress * self.fields.lookup(pos, target)

    def shelves(self, pos: torch.Tensor) -> torch.Tensor:
        """Minus the shelf and wall proximity cost of ``pos`` (..., 2): (...)."""
        # x and y apart: two (..., R) tensors are cheaper than one (..., R, 2) and its norm.
        x, y = pos[..., 0:1], pos[..., 1:2]
        gap = torch.hypot(x.clamp(self.rects[:, 0], self.rects[:, 2]) - x, y.clamp(self.rects[:, 1], self.rects[:, 3]) - y)
        return self.shelf_gaps(gap)

    def shelf_gaps(self, gap: torch.Tensor) -> torch.Tensor:
        """Minus the proximity cost of centre-to-rectangle distances ``gap`` (..., R) to shelves and walls: (...)."""
        return self._proximity(gap, ROBOT_RADIUS)

    def agents(self, dist: torch.Tensor) -> torch.Tensor:
        """Minus the proximity cost of centre distances ``dist`` (..., O) to other agents (inf: none): (...)."""
        return self._proximity(dist, 2 * ROBOT_RADIUS)

    def _proximity(self, dist: torch.Tensor, touch: float) -> torch.Tensor:
        w = self.weights
        depth = torch.relu(touch + w.margin - dist)
        return -(w.proximity * depth + w.contact * (dist < touch)).sum(-1)
