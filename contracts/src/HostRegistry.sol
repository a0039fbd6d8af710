// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

/// @title HostRegistry — where hosts publish who they are, what they serve and at what price
/// @notice A host registers its libp2p peer id, its models and a price per token for each, locking a stake
///         in native ETH. Leaving takes two steps: `deregister` deactivates the entry at once and starts
///         an unbonding delay; after it, `withdrawStake` returns the stake and deletes the entry. The delay
///         keeps a stake at risk for a while after the host stops serving (a later slashing or dispute
///         mechanism needs that window; this contract only enforces it).
/// @dev One entry per address. An entry exists iff its peer id is non-empty (registration refuses an
///      empty one), so `getHost` of an unknown address returns a zeroed struct with peerId "".
contract HostRegistry is ReentrancyGuard {
    struct Host {
        string peerId;
        string[] models;
        uint256[] prices;
        uint256 stake;
        bool active;
        uint64 unbondingUntil;
    }

    /// @notice The smallest stake (wei) a registration must lock.
    uint256 public immutable minStake;
    /// @notice Seconds between `deregister` and the earliest `withdrawStake`.
    uint64 public immutable unbondingDelay;

    mapping(address host => Host) private _hosts;

    event HostRegistered(address indexed host, string peerId, string[] models, uint256[] prices, uint256 stake);
    event HostUpdated(address indexed host, string peerId, string[] models, uint256[] prices);
    event HostDeregistered(address indexed host, uint64 unbondingUntil);
    event StakeWithdrawn(address indexed host, uint256 stake);

    error AlreadyRegistered();
    error StillUnbonding(uint64 until);
    error NotRegistered();
    error StakeTooLow(uint256 minStake);
    error EmptyPeerId();
    error NoModels();
    error EmptyModel();
    error PricesMismatch();
    error NotDeregistered();
    error TransferFailed();

    constructor(uint256 minStake_, uint64 unbondingDelay_) {
        minStake = minStake_;
        unbondingDelay = unbondingDelay_;
    }

    /// @notice Registers the caller with its metadata; `msg.value` is the stake (at least `minStake`).
    /// @dev An entry that is unbonding must be withdrawn first (`StillUnbonding`), so a stake is never
    ///      silently merged into, or orphaned by, a new registration.
    function register(string calldata peerId, string[] calldata models, uint256[] calldata prices)
        external
        payable
    {
        _checkMetadata(peerId, models, prices);
        Host storage entry = _hosts[msg.sender];
        if (bytes(entry.peerId).length != 0) {
            if (entry.active) revert AlreadyRegistered();
            revert StillUnbonding(entry.unbondingUntil);
        }
        if (msg.value < minStake) revert StakeTooLow(minStake);
        _store(entry, peerId, models, prices);
        entry.stake = msg.value;
        entry.active = true;
        entry.unbondingUntil = 0;
        emit HostRegistered(msg.sender, peerId, models, prices, msg.value);
    }

    /// @notice Replaces the metadata of the caller's active registration (the stake is unchanged).
    function update(string calldata peerId, string[] calldata models, uint256[] calldata prices) external {
        Host storage entry = _hosts[msg.sender];
        if (!entry.active) revert NotRegistered();
        _checkMetadata(peerId, models, prices);
        _store(entry, peerId, models, prices);
        emit HostUpdated(msg.sender, peerId, models, prices);
    }

    /// @notice Deactivates the caller's registration and starts the unbonding delay.
    /// @return unbondingUntil When `withdrawStake` becomes possible (block.timestamp + unbondingDelay).
    function deregister() external returns (uint64 unbondingUntil) {
        Host storage entry = _hosts[msg.sender];
        if (!entry.active) revert NotRegistered();
        unbondingUntil = uint64(block.timestamp) + unbondingDelay;
        entry.active = false;
        entry.unbondingUntil = unbondingUntil;
        emit HostDeregistered(msg.sender, unbondingUntil);
    }

    /// @notice After the unbonding delay, returns the stake to the caller and deletes the entry.
    function withdrawStake() external nonReentrant {
        Host storage entry = _hosts[msg.sender];
        if (bytes(entry.peerId).length == 0) revert NotRegistered();
        if (entry.active) revert NotDeregistered();
        if (block.timestamp < entry.unbondingUntil) revert StillUnbonding(entry.unbondingUntil);
        uint256 stake = entry.stake;
        delete _hosts[msg.sender];
        emit StakeWithdrawn(msg.sender, stake);
        if (stake != 0) {
            (bool ok,) = payable(msg.sender).call{value: stake}("");
            if (!ok) revert TransferFailed();
        }
    }

    /// @notice The registration of `host` (`active` is false while unbonding); peerId "" if there is none.
    function getHost(address host) external view returns (Host memory) {
        return _hosts[host];
    }

    /// @dev Replaces the metadata of `entry` (the legacy code generator cannot copy a calldata string[]
    ///      to storage in one assignment).
    function _store(
        Host storage entry,
        string calldata peerId,
        string[] calldata models,
        uint256[] calldata prices
    ) private {
        entry.peerId = peerId;
        delete entry.models;
        for (uint256 i = 0; i < models.length; ++i) {
            entry.models.push(models[i]);
        }
        entry.prices = prices;
    }

    function _checkMetadata(string calldata peerId, string[] calldata models, uint256[] calldata prices)
        private
        pure
    {
        if (bytes(peerId).length == 0) revert EmptyPeerId();
        if (models.length == 0) revert NoModels();
        for (uint256 i = 0; i < models.length; ++i) {
            if (bytes(models[i]).length == 0) revert EmptyModel();
        }
        if (prices.length != models.length) revert PricesMismatch();
    }
}
