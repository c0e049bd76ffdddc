/* The floor of a container start: the kernel work of nsrecipes' native start as root, done by
 * a small C program, with nothing else in between. bench/container_start.py compiles it (cc)
 * and runs it beside nsrecipes and bubblewrap; the time above it is what the Python tool
 * adds. The calls, in order, are those of recipes/container (run.py, inside.py, state.py):
 *
 *   tool:  mkdir the state dir and its mark, the container dir with upper, work, merged;
 *          mkdir the cgroup; unshare(CLONE_NEWPID) and fork PID 1; write the record
 *          (a temporary file renamed into place); waitpid
 *   PID 1: PR_SET_PDEATHSIG; unshare mount, UTS, IPC (and net); / rslave; the overlay;
 *          /proc; a tmpfs /dev with six nodes, four links and shm; the hostname; lo up;
 *          open the cgroup's file; pivot_root . .; the old root rslave and detached;
 *          join the cgroup; unshare a cgroup namespace; vfork+exec the command, reap it
 *   undo:  rmdir the cgroup; remove the container dir, the mark and the state dir
 *
 * usage: container_floor ROOTFS BASE CGROUP_DIR CGROUP_FILE [--net] -- COMMAND...
 * Marks (CLOCK_MONOTONIC ns, pid, label: nsutil/timeline.py's format) are appended to
 * $NSR_TIMELINE when it is set. Exit status: the command's; 125 if a call failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int marks = -1;

static void mark(const char *label)
{
    if (marks < 0)
        return;
    struct timespec ts;
    char line[160];
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int n = snprintf(line, sizeof line, "%lld %d %s\n",
                     (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec, (int)getpid(), label);
    if (write(marks, line, n) < 0)
        return;
}

static void must(int ok, const char *call)
{
    if (!ok) {
        fprintf(stderr, "container_floor: %s: %s\n", call, strerror(errno));
        _exit(125);
    }
}

static void pathf(char *out, const char *a, const char *b)
{
    errno = ENAMETOOLONG;
    must(snprintf(out, 4096, "%s/%s", a, b) < 4096, a);
}

static void make_dev(const char *dev)
{
    static const struct { const char *name; int major, minor; } nodes[] = {
        {"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7},
        {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}};
    static const char *links[][2] = {
        {"fd", "/proc/self/fd"}, {"stdin", "/proc/self/fd/0"},
        {"stdout", "/proc/self/fd/1"}, {"stderr", "/proc/self/fd/2"}};
    char p[4096];
    must(mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=65536k") == 0, "mount tmpfs");
    for (unsigned i = 0; i < sizeof nodes / sizeof nodes[0]; i++) {
        pathf(p, dev, nodes[i].name);
        must(mknod(p, S_IFCHR | 0666, makedev(nodes[i].major, nodes[i].minor)) == 0, "mknod");
        must(chmod(p, 0666) == 0, "chmod");
    }
    for (unsigned i = 0; i < sizeof links / sizeof links[0]; i++) {
        pathf(p, dev, links[i][0]);
        must(symlink(links[i][1], p) == 0, "symlink");
    }
    pathf(p, dev, "shm");
    must(mkdir(p, 01777) == 0 && chmod(p, 01777) == 0, "mkdir shm");
}

static void lo_up(void)
{
    struct ifreq ifr = {0};
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    must(s >= 0, "socket");
    strcpy(ifr.ifr_name, "lo");
    must(ioctl(s, SIOCGIFFLAGS, &ifr) == 0, "SIOCGIFFLAGS");
    ifr.ifr_flags |= IFF_UP;
    must(ioctl(s, SIOCSIFFLAGS, &ifr) == 0, "SIOCSIFFLAGS");
    close(s);
}

static int pid1(const char *rootfs, const char *cdir, const char *cgfile, int net, char **cmd)
{
    char upper[4096], work[4096], merged[4096], opts[16384], p[4096];
    mark("PID 1: forked");
    must(prctl(PR_SET_PDEATHSIG, SIGKILL) == 0, "prctl");
    must(unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | (net ? CLONE_NEWNET : 0)) == 0,
         "unshare");
    mark("PID 1: unshared");
    must(mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) == 0, "make / rslave");
    pathf(upper, cdir, "upper");
    pathf(work, cdir, "work");
    pathf(merged, cdir, "merged");
    snprintf(opts, sizeof opts, "lowerdir=%s,upperdir=%s,workdir=%s", rootfs, upper, work);
    must(mount("overlay", merged, "overlay", 0, opts) == 0, "mount overlay");
    pathf(p, merged, "proc");
    must(mount("proc", p, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) == 0, "mount proc");
    pathf(p, merged, "dev");
    make_dev(p);
    must(sethostname("nsr-floor", 9) == 0, "sethostname");
    if (net)
        lo_up();
    int cg = open(cgfile, O_WRONLY | O_CLOEXEC);
    must(cg >= 0, "open cgroup file");
    must(chdir(merged) == 0, "chdir");
    must(syscall(SYS_pivot_root, ".", ".") == 0, "pivot_root");
    must(mount(NULL, ".", NULL, MS_REC | MS_SLAVE, NULL) == 0, "make old root rslave");
    must(umount2(".", MNT_DETACH) == 0, "umount old root");
    must(chdir("/") == 0, "chdir /");
    must(write(cg, "0", 1) == 1, "join cgroup");
    close(cg);
    must(unshare(CLONE_NEWCGROUP) == 0, "unshare cgroup");
    mark("PID 1: fork the command");
    pid_t child = vfork();
    if (child == 0) {
        execvp(cmd[0], cmd);
        _exit(127);
    }
    must(child > 0, "vfork");
    int status;
    must(waitpid(child, &status, 0) == child, "waitpid command");
    mark("PID 1: the command was reaped");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void remove_tree(const char *cdir)
{
    static const char *files[] = {"state.json", "upper", "work/work", "work", "merged"};
    char p[4096];
    for (unsigned i = 0; i < sizeof files / sizeof files[0]; i++) {
        pathf(p, cdir, files[i]);
        if (unlink(p) != 0)
            must(errno == EISDIR && rmdir(p) == 0, "remove");
    }
    must(rmdir(cdir) == 0, "rmdir container dir");
}

int main(int argc, char **argv)
{
    int dashes = 0;
    for (int k = 5; k < argc && !dashes; k++)
        if (strcmp(argv[k], "--") == 0)
            dashes = k;
    if (!dashes || dashes + 1 >= argc || dashes > 6) {
        fprintf(stderr, "usage: %s ROOTFS BASE CGROUP_DIR CGROUP_FILE [--net] -- CMD...\n",
                argv[0]);
        return 2;
    }
    const char *rootfs = argv[1], *base = argv[2], *cgdir = argv[3], *cgfile = argv[4];
    int net = dashes == 6 && strcmp(argv[5], "--net") == 0;
    char **cmd = argv + dashes + 1;
    const char *tl = getenv("NSR_TIMELINE");
    if (tl)
        marks = open(tl, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);

    char state[4096], mark_file[4096], cdir[4096], p[4096];
    mark("run_container");
    pathf(state, base, "state");
    pathf(mark_file, state, ".made");
    must(mkdir(state, 0700) == 0 && chmod(state, 0700) == 0, "mkdir state dir");
    int fd = open(mark_file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    must(fd >= 0, "mark");
    close(fd);
    pathf(cdir, state, "nsr-c-floor");
    must(mkdir(cdir, 0700) == 0, "mkdir container dir");
    const char *subdirs[] = {"upper", "work", "merged"};
    for (int k = 0; k < 3; k++) {
        pathf(p, cdir, subdirs[k]);
        must(mkdir(p, 0755) == 0, "mkdir");
    }
    must(mkdir(cgdir, 0755) == 0, "mkdir cgroup");
    mark("fork PID 1");
    must(unshare(CLONE_NEWPID) == 0, "unshare pid");
    pid_t pid = fork();
    must(pid >= 0, "fork");
    if (pid == 0)
        _exit(pid1(rootfs, cdir, cgfile, net, cmd));
    mark("forked PID 1");
    char rec[4096], tmp[4096], text[1024];
    pathf(rec, cdir, "state.json");
    snprintf(tmp, sizeof tmp, "%s.tmp", rec);
    int n = snprintf(text, sizeof text, "{\n \"name\": \"nsr-c-floor\",\n \"pid\": %d,\n"
                     " \"rootfs\": \"%s\",\n \"dir\": \"%s\"\n}\n", (int)pid, rootfs, cdir);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    must(fd >= 0 && write(fd, text, n) == n && close(fd) == 0, "write record");
    must(rename(tmp, rec) == 0, "rename record");
    mark("waitpid() for the tool's child");
    int status;
    must(waitpid(pid, &status, 0) == pid, "waitpid");
    mark("the tool reaped its child");
    mark("undo");
    must(rmdir(cgdir) == 0, "rmdir cgroup");
    remove_tree(cdir);
    must(unlink(mark_file) == 0 && rmdir(state) == 0, "remove state dir");
    mark("undone");
    return WIFEXITED(status) ? WEXITSTATUS(status) : 125;
}
