from setuptools import find_packages, setup

setup(
    name="powerstrip-flocker",
    version="0.1.0",
    description=(
        "Portable Docker volumes: docker run -v /flocker/NAME:/data on any node "
        "creates or moves the volume there before the container starts."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["powerstripflocker", "powerstripflocker.*"]),
    package_data={"powerstripflocker": ["*.yml", "**/*.yml"]},
    python_requires=">=3.11",
    # Ranges the code works with. The proxy's and the agent's streams read Twisted's
    # private transport and HTTP channel attributes, and the clients subclass
    # twisted.web.client._HTTP11ClientFactory: Twisted stops before its next major version.
    # constraints.txt pins the exact versions the test suite last passed with.
    install_requires=[
        "twisted[tls]>=23.10,<27",
        "treq>=23.11",
        "klein>=23.5",
        # Imported directly (the routing errors the Klein apps render), not only by Klein.
        "werkzeug>=2.2,<4",
        "pyyaml>=6",
        "zope.interface>=6",
        "prometheus_client>=0.17",
        "jsonschema>=4.17",
        "httptools>=0.9",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.2",
            "hypothesis>=6.90",
        ],
        "bench": [
            "matplotlib>=3.5",
        ],
    },
    entry_points={
        "console_scripts": ["powerstrip-flocker=powerstripflocker.cli.main:main"],
    },
)
