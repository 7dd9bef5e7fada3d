/**
 * Runs `work` over `items` with at most `limit` in flight. The first failure stops new work, calls
 * `onFirstFailure` (to abort the work in flight) and, once everything has settled, is what rejects.
 */
export async function mapBounded<T, R>(
  items: readonly T[], limit: number, work: (item: T, index: number) => Promise<R>, onFirstFailure?: () => Promise<void>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  let firstError: { error: unknown } | null = null;
  const runner = async () => {
    while (!firstError && next < items.length) {
      const i = next++;
      try {
        results[i] = await work(items[i], i);
      } catch (e) {
        if (firstError) continue;
        firstError = { error: e };
        await onFirstFailure?.();
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, runner));
  if (firstError) throw (firstError as { error: unknown }).error;
  return results;
}
