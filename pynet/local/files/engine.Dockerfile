# A modern Docker engine (Debian 13's docker.io, docker-cli, docker-buildx) from a debootstrap
# tree: the stand-in for the laptop's Docker Desktop / Docker Engine 25+.
FROM scratch
ADD rootfs.tar /
COPY engine-start.sh /usr/local/sbin/engine-start
ENV LANG=C.UTF-8 DOCKER_ALLOW_IPV6_ON_IPV4_INTERFACE=1
STOPSIGNAL SIGTERM
CMD ["/usr/local/sbin/engine-start"]
