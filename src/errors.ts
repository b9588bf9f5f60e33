// Errors that carry the operation, the errno and what to do next.

const ERRNO: Record<number, string> = {
  1: "EPERM", 2: "ENOENT", 4: "EINTR", 5: "EIO", 7: "E2BIG", 9: "EBADF", 11: "EAGAIN", 12: "ENOMEM",
  13: "EACCES", 16: "EBUSY", 17: "EEXIST", 19: "ENODEV", 22: "EINVAL", 24: "EMFILE", 28: "ENOSPC",
  34: "ERANGE", 90: "EMSGSIZE", 92: "ENOPROTOOPT", 95: "EOPNOTSUPP", 98: "EADDRINUSE", 99: "EADDRNOTAVAIL",
  101: "ENETUNREACH", 105: "ENOBUFS", 111: "ECONNREFUSED", 113: "EHOSTUNREACH", 524: "ENOTSUPP",
};

export function errnoName(errno: number): string {
  return ERRNO[Math.abs(errno)] ?? `errno ${Math.abs(errno)}`;
}

export class AinftpError extends Error {
  /** What was being done, e.g. "attach veth0". */
  readonly op: string;
  /** Positive errno, or 0 when the failure is not a system call's. */
  readonly errno: number;
  /** One line telling the user what to do next. */
  readonly hint: string;
  /** Extra detail (a verifier log tail), printed after the message under `detailTitle`. */
  readonly detail: string;
  readonly detailTitle: string;

  constructor(op: string, message: string, opts: { errno?: number; hint?: string; detail?: string; detailTitle?: string } = {}) {
    const errno = Math.abs(opts.errno ?? 0);
    super(`${op}: ${message}${errno ? ` (${errnoName(errno)})` : ""}`);
    this.name = "AinftpError";
    this.op = op;
    this.errno = errno;
    this.hint = opts.hint ?? "";
    this.detail = opts.detail ?? "";
    this.detailTitle = opts.detailTitle ?? "log tail";
  }

  toJSON() {
    return {
      error: this.message,
      op: this.op,
      errno: this.errno ? errnoName(this.errno) : null,
      hint: this.hint || null,
      ...(this.detail ? { detail: this.detail } : {}),
    };
  }
}

/** Throws an AinftpError when rc is a negative errno; returns rc otherwise. */
export function check(rc: number, op: string, what: string, hint?: (errno: number) => string | undefined): number {
  if (rc >= 0) return rc;
  const errno = -rc;
  let h = hint?.(errno);
  if (h === undefined && (errno === 1 || errno === 13)) h = privilegeHint;
  throw new AinftpError(op, what, { errno, hint: h });
}

export const privilegeHint =
  "run as root (sudo ainftp …) or grant CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON to the binary";
