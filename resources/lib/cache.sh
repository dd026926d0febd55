# Shared by Kiln's scripts (source it): where expensive artefacts are cached, outside the clone.
# $KILN_CACHE, else /var/cache/kiln when writable, else ~/.cache/kiln.
cache_root() {
  if [[ -n "${KILN_CACHE:-}" ]]; then echo "$KILN_CACHE"
  elif mkdir -p /var/cache/kiln 2>/dev/null && [[ -w /var/cache/kiln ]]; then echo /var/cache/kiln
  else echo "${XDG_CACHE_HOME:-$HOME/.cache}/kiln"; fi
}
