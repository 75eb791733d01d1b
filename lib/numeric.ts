// Arithmetic as the Python code we follow does it.

/** Python's round() (and numpy's rint) of a float: to the nearest integer, halves to the even
 * neighbour (round(10.5) == 10, round(11.5) == 12). */
export function roundHalfEven(x: number): number {
  const floor = Math.floor(x), fraction = x - floor;
  if (fraction !== 0.5) return fraction < 0.5 ? floor : floor + 1;
  return floor % 2 === 0 ? floor : floor + 1;
}
