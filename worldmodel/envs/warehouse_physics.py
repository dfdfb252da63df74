"""One warehouse step for every agent at once: motion, contacts, the humans' walking, the robots' tasks.

Agents are discs of one radius: robots and humans alike, ``G`` in all. Each function is one batched
numpy program over all agents (dense G x G pair math: a few hundred agents). The numbers of the world
(radius, speeds, step) come from ``worldmodel.envs.warehouse``, which passes them in.
"""

from __future__ import annotations

import numpy as np

from worldmodel.envs.warehouse_layout import Layout

CONTACT_TOLERANCE = 1e-5
"""Overlap (metres) below which touching discs are not counted as a collision: agents resting
against each other or a shelf overlap by float32 rounding alone."""


def integrate(pos: np.ndarray, vel: np.ndarray, accel: np.ndarray, max_speed: float, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Semi-implicit Euler: v' = v + accel dt with |v'| <= max_speed, then p' = p + v' dt.

    Args:
        pos, vel, accel: (G, 2), accel in m/s^2.

    Returns:
        pos (G, 2), vel (G, 2).
    """
    vel = clamp_speed(vel + accel * dt, max_speed)
    return pos + vel * dt, vel


def clamp_speed(vel: np.ndarray, max_speed: float) -> np.ndarray:
    """``vel`` (G, 2) scaled down where its norm exceeds ``max_speed``."""
    speed = np.linalg.norm(vel, axis=-1, keepdims=True)
    return vel * np.minimum(1.0, max_speed / np.maximum(speed, 1e-12))


def resolve_contacts(pos: np.ndarray, vel: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Push overlapping discs apart and make their approach inelastic.

    Every pair closer than two radii moves apart along its normal, each disc by half the overlap;
    a pair still approaching along the normal gets the average of the two normal velocities (a
    separating pair keeps its motion, so contact never glues). All pairs are corrected at once, so a
    disc touching several others takes the sum of their corrections.

    Args:
        pos: (G, 2) centres.
        vel: (G, 2) velocities.
        radius: disc radius.

    Returns:
        pos (G, 2), vel (G, 2), contact (G, G) bool: pairs that overlapped by more than
        ``CONTACT_TOLERANCE`` (symmetric, False on the diagonal).
    """
    g = len(pos)
    # x and y as separate (G, G) arrays: numpy reduces a trailing axis of 2 slowly.
    dx, dy = pos[None, :, 0] - pos[:, None, 0], pos[None, :, 1] - pos[:, None, 1]  # (G, G) p_j - p_i
    dist = np.hypot(dx, dy)
    overlap = np.maximum(2.0 * radius - dist, 0.0)
    np.fill_diagonal(overlap, 0.0)
    # Coincident centres get a fixed antisymmetric normal (along x, away from the higher index)
    # so the pair still separates.
    coincident = dist == 0.0
    safe = np.where(coincident, 1.0, dist)
    nx = np.where(coincident, np.sign(np.arange(g)[None, :] - np.arange(g)[:, None]), dx / safe)  # (G, G) unit i -> j
    ny = np.where(coincident, 0.0, dy / safe)
    closing = (vel[None, :, 0] - vel[:, None, 0]) * nx + (vel[None, :, 1] - vel[:, None, 1]) * ny  # < 0: approaching
    dv = np.where((overlap > 0) & (closing < 0), 0.5 * closing, 0.0)  # (G, G) i's normal velocity change
    pos = pos - 0.5 * np.stack([(overlap * nx).sum(axis=1), (overlap * ny).sum(axis=1)], axis=-1)
    vel = vel + np.stack([(dv * nx).sum(axis=1), (dv * ny).sum(axis=1)], axis=-1)
    return pos, vel, overlap > CONTACT_TOLERANCE


def bumper_stop(vel: np.ndarray, contact: np.ndarray, robots: int) -> np.ndarray:
    """``vel`` (G, 2) with the first ``robots`` agents halted where ``contact`` (G, G) says they touch another
    agent (the others, humans, walk on)."""
    halted = contact[:robots].any(axis=1)
    out = vel.copy()
    out[:robots][halted] = 0.0
    return out


def walker_actions(pos: np.ndarray, vel: np.ndarray, waypoint: np.ndarray, speed: float, accel: float, dt: float) -> np.ndarray:
    """The humans' controller: the action in [-1, 1]^2 that best reaches ``speed`` towards the waypoint.

    Near the waypoint the wanted speed drops to what reaches it in one step, so walkers do not orbit.

    Args:
        pos, vel, waypoint: (H, 2).
        speed: walking speed, m/s.
        accel: acceleration of a unit action, m/s^2.
        dt: step, s.

    Returns:
        (H, 2) actions.
    """
    to = waypoint - pos
    dist = np.linalg.norm(to, axis=-1, keepdims=True)  # (H, 1)
    wanted = to / np.maximum(dist, 1e-12) * np.minimum(speed, dist / dt)
    return np.clip((wanted - vel) / (accel * dt), -1.0, 1.0)


def next_crossings(node: np.ndarray, pos: np.ndarray, layout: Layout, reach: float, rng: np.random.Generator) -> np.ndarray:
    """The humans' next walkway crossings: those within ``reach`` of theirs go on along its row or column.

    The walkway lines are free of shelves, so walking straight between two crossings of one line
    never meets a shelf.

    Args:
        node: (H, 2) long [row, column] of each human's current crossing.
        pos: (H, 2) the humans' positions.
        layout: the floor.
        reach: metres from a crossing that count as there.
        rng: draws the turn and the distance for every human, so the stream does not depend on who arrived.

    Returns:
        (H, 2) long [row, column].
    """
    rows, cols = layout.walkway_nodes.shape[:2]
    reached = np.linalg.norm(pos - layout.walkway_nodes[node[:, 0], node[:, 1]], axis=-1) <= reach  # (H,)
    along_row = rng.random(len(node)) < 0.5  # change column; else change row
    shift = rng.integers(1, [max(rows, 2), max(cols, 2)], size=(len(node), 2))
    row = np.where(reached & ~along_row, (node[:, 0] + shift[:, 0]) % rows, node[:, 0])
    col = np.where(reached & along_row, (node[:, 1] + shift[:, 1]) % cols, node[:, 1])
    return np.stack([row, col], axis=-1)


def advance_tasks(
    pos: np.ndarray, target: np.ndarray, stage: np.ndarray, layout: Layout, reach: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robots within ``reach`` of a pick point go on to a random station; at a station, a delivery and a new pick.

    Args:
        pos, target: (N, 2) positions and current targets.
        stage: (N,) long, 0: heading to a pick point, 1: to a station.
        layout: the floor.
        reach: metres from a target that count as there.
        rng: draws a station and a pick for every robot, so the stream does not depend on who arrived.

    Returns:
        target (N, 2), stage (N,), delivered (N,) bool.
    """
    n = len(pos)
    reached = np.linalg.norm(pos - target, axis=-1) <= reach
    picked, delivered = reached & (stage == 0), reached & (stage == 1)
    station = layout.stations[rng.integers(len(layout.stations), size=n)]
    pick = layout.picks[rng.integers(len(layout.picks), size=n)]
    target = np.where(picked[:, None], station, np.where(delivered[:, None], pick, target))
    return target, np.where(picked, 1, np.where(delivered, 0, stage)), delivered
