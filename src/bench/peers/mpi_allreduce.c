// One rank of the Open MPI all-reduce baseline.
//
//   mpirun ... mpi_allreduce BYTES ROUNDS WARMUP [back-to-back]
//
// Same protocol as gloo_allreduce.py: every rank builds the deterministic
// float32 input of every rank (values k/64 with |k| <= 48, so every partial
// sum is exact in float32 whatever order MPI sums in), restores its own input
// (untimed), MPI_Barrier, then times MPI_Allreduce(MPI_IN_PLACE, MPI_FLOAT,
// MPI_SUM) alone with MPI_Wtime (back-to-back: no barrier before the timed
// rounds), and checks the result against the sum it
// computed locally. Every rank prints one JSON line on stdout (one write).
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static float input_value(long i, int r) {
  long k = (i * 7 + (long)r * 13) % 97 - 48;
  return (float)k / 64.0f;
}

// A file named for this rank in the directory $env names (none: unset).
static void mark(const char *env, int rank) {
  const char *d = getenv(env);
  if (!d) return;
  char path[4096];
  snprintf(path, sizeof path, "%s/%d", d, rank);
  FILE *f = fopen(path, "w");
  if (f) fclose(f);
}

// The warm-up is over ($AINFTP_BENCH_TIMED): the bench's CPU window covers
// the timed rounds alone (src/bench/timed.ts).
static void mark_timed(int rank) { mark("AINFTP_BENCH_TIMED", rank); }

// The first all-reduce is done ($AINFTP_BENCH_STARTED): the bench tells a
// start-up that hangs (no rank gets there) from a slow run.
// AINFTP_BENCH_MPI_STALL_MS (tests): wait that long first, as a hung
// start-up would.
static void mark_started(int rank) {
  const char *stall = getenv("AINFTP_BENCH_MPI_STALL_MS");
  if (stall) usleep((useconds_t)(atol(stall) * 1000));
  mark("AINFTP_BENCH_STARTED", rank);
}

/* This process's CPU time in ms, every thread, user and kernel (Open MPI's
 * progress threads too): each timed round reports its difference, as every
 * system's ranks do (round_cpu_ms). */
static double cpu_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

// Linear interpolation between closest ranks (numpy's default), as the Python rank.
static double percentile(const double *sorted, int n, double q) {
  double pos = (n - 1) * q;
  int lo = (int)pos;
  int hi = lo + 1 < n ? lo + 1 : n - 1;
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, world;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if ((argc != 4 && argc != 5) || (argc == 5 && strcmp(argv[4], "back-to-back") != 0)) {
    if (rank == 0) fprintf(stderr, "usage: %s BYTES ROUNDS WARMUP [back-to-back]\n", argv[0]);
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  // back-to-back: no barrier before the timed rounds (as a trainer calls all-reduce)
  int back_to_back = argc == 5;
  long nbytes = atol(argv[1]);
  int rounds = atoi(argv[2]), warmup = atoi(argv[3]);
  if (nbytes <= 0 || nbytes % 4 || rounds <= 0 || warmup < 0 || rounds > 100000) {
    if (rank == 0) fprintf(stderr, "bad arguments: bytes must be a positive multiple of 4, rounds in 1..100000\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  long n = nbytes / 4;
  float *mine = malloc(n * sizeof(float));
  float *work = malloc(n * sizeof(float));
  float *expected = calloc(n, sizeof(float));
  double *round_ms = malloc(rounds * sizeof(double));
  double *sorted = malloc(rounds * sizeof(double));
  double *round_cpu = malloc(rounds * sizeof(double));
  if (!mine || !work || !expected || !round_ms || !sorted || !round_cpu) {
    fprintf(stderr, "rank %d: out of memory\n", rank);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  for (long i = 0; i < n; i++) mine[i] = input_value(i, rank);
  for (int r = 0; r < world; r++)
    for (long i = 0; i < n; i++) expected[i] += input_value(i, r);

  int verified = 1;
  double max_err = 0;
  for (int k = 0; k < warmup + rounds; k++) {
    if (k == warmup) mark_timed(rank);
    memcpy(work, mine, n * sizeof(float));
    if (k < warmup || !back_to_back) MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime(), c0 = cpu_ms();
    MPI_Allreduce(MPI_IN_PLACE, work, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    double t1 = MPI_Wtime(), c1 = cpu_ms();
    if (k == 0) mark_started(rank);
    // and a barrier after, as ainftp's swarm has: no rank verifies while
    // another still moves data (the bench's CPU window would charge it)
    if (!back_to_back) MPI_Barrier(MPI_COMM_WORLD);
    for (long i = 0; i < n; i++) {
      double err = fabs((double)work[i] - (double)expected[i]);
      if (err > max_err) max_err = err;
      // Same test as torch.allclose(rtol=1e-5, atol=1e-5).
      if (!(err <= 1e-5 + 1e-5 * fabs((double)expected[i]))) verified = 0;
    }
    if (k >= warmup) round_ms[k - warmup] = (t1 - t0) * 1000.0, round_cpu[k - warmup] = c1 - c0;
  }
  MPI_Barrier(MPI_COMM_WORLD);

  memcpy(sorted, round_ms, rounds * sizeof(double));
  qsort(sorted, rounds, sizeof(double), cmp_double);
  int major = 0, minor = 0, release = 0;
#ifdef OMPI_MAJOR_VERSION
  major = OMPI_MAJOR_VERSION, minor = OMPI_MINOR_VERSION, release = OMPI_RELEASE_VERSION;
#endif
  size_t cap = 512 + (size_t)rounds * 48;
  char *out = malloc(cap);
  if (!out) MPI_Abort(MPI_COMM_WORLD, 1);
  size_t len = 0;
  len += snprintf(out + len, cap - len,
                  "{\"system\":\"mpi\",\"rank\":%d,\"world\":%d,\"bytes\":%ld,\"rounds\":%d,\"round_ms\":[",
                  rank, world, nbytes, rounds);
  for (int i = 0; i < rounds; i++) len += snprintf(out + len, cap - len, "%s%.4f", i ? "," : "", round_ms[i]);
  len += snprintf(out + len, cap - len, "],\"round_cpu_ms\":[");
  for (int i = 0; i < rounds; i++) len += snprintf(out + len, cap - len, "%s%.4f", i ? "," : "", round_cpu[i]);
  len += snprintf(out + len, cap - len,
                  "],\"median_ms\":%.4f,\"p10\":%.4f,\"p90\":%.4f,\"p99\":%.4f,\"verified\":%s,"
                  "\"max_abs_err\":%g,\"mpi_version\":\"%d.%d.%d\"}\n",
                  percentile(sorted, rounds, 0.5), percentile(sorted, rounds, 0.10), percentile(sorted, rounds, 0.90),
                  percentile(sorted, rounds, 0.99), verified ? "true" : "false", max_err, major, minor, release);
  // One write per rank so mpirun's forwarded stdout does not interleave lines.
  if (write(STDOUT_FILENO, out, len) != (ssize_t)len) perror("write");
  free(out);
  free(mine), free(work), free(expected), free(round_ms), free(sorted), free(round_cpu);
  MPI_Finalize();
  return 0;
}
