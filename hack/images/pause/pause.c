/*
 * The pod sandbox process of the local cluster (stand-in for registry.k8s.io/pause): holds the pod's namespaces,
 * reaps the zombies re-parented to it (when the pod shares its PID namespace, it is PID 1), and exits 0 on
 * SIGTERM or SIGINT. Built with `gcc -static -Os` by hack/build-images.sh.
 *   pause -v   prints the version and exits
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define VERSION "3.10-local"

static volatile sig_atomic_t stop_signal;

static void on_stop(int sig) { stop_signal = sig; }

static void on_child(int sig) {
  (void)sig;
  int saved = errno;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
  errno = saved;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "-v") == 0) {
    printf("pause.c %s\n", VERSION);
    return 0;
  }
  if (getpid() != 1) fprintf(stderr, "pause: warning: not PID 1\n");

  struct sigaction stop = {0}, child = {0};
  stop.sa_handler = on_stop;
  sigemptyset(&stop.sa_mask);
  if (sigaction(SIGINT, &stop, NULL) < 0 || sigaction(SIGTERM, &stop, NULL) < 0) {
    perror("pause: sigaction");
    return 1;
  }
  child.sa_handler = on_child;
  child.sa_flags = SA_NOCLDSTOP | SA_RESTART;
  sigemptyset(&child.sa_mask);
  if (sigaction(SIGCHLD, &child, NULL) < 0) {
    perror("pause: sigaction");
    return 2;
  }
  /* Block the stop signals outside sigsuspend so one arriving between the check and the wait is not lost. */
  sigset_t block, wait_mask;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  sigprocmask(SIG_BLOCK, &block, &wait_mask);
  sigdelset(&wait_mask, SIGINT);
  sigdelset(&wait_mask, SIGTERM);
  while (!stop_signal) sigsuspend(&wait_mask);
  fprintf(stderr, "pause: shutting down, got signal %d\n", (int)stop_signal);
  return 0;
}
